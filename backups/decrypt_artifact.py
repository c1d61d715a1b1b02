#!/usr/bin/env python3
"""Decrypt a DR Panel artifact without the panel: needs only Python 3 and ``cryptography``.

    DRPANEL_KEY=<base64 master key> python3 decrypt_artifact.py ARTIFACT OUTPUT

It follows the byte layout in the README ("Artifact format") independently of the panel's
code: it reads the header, unwraps the data key with the master key (wrap method 1, AES-256-GCM),
authenticates and decrypts every chunk in order, checks the end marker, and writes OUTPUT only
when everything authenticated. KMS-wrapped keys (method 2) need the panel or boto3.
"""

import base64
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main(source: str, target: str, master_key: bytes) -> None:
    with open(source, "rb") as f:
        data = f.read()
    fixed = data[:37]
    magic, version, algorithm, chunk_size, artifact_id, prefix = struct.unpack(">8sBBI16s7s", fixed)
    if magic != b"DRPANEL\x1a" or version != 1 or algorithm != 1:
        sys.exit("not a version-1 DR Panel artifact")
    (section_length,) = struct.unpack(">H", data[37:39])
    section = data[39:39 + section_length]
    checksum = data[39 + section_length:47 + section_length]
    if hashlib.sha256(data[:39 + section_length]).digest()[:8] != checksum:
        sys.exit("header checksum mismatch")
    key_id_length = section[0]
    key_id = section[1:1 + key_id_length]
    wrap_method, wrapped_length = struct.unpack(">BH", section[1 + key_id_length:4 + key_id_length])
    wrapped = section[4 + key_id_length:4 + key_id_length + wrapped_length]
    if wrap_method != 1:
        sys.exit("this artifact's data key is wrapped by KMS; use the panel")
    aad = b"drpanel-wrap-v1\x00" + key_id + b"\x00" + fixed
    data_key = AESGCM(master_key).decrypt(wrapped[:12], wrapped[12:], aad)
    body, footer = data[47 + section_length:-20], data[-20:]
    end_magic, plaintext_size, chunks = struct.unpack(">8sQI", footer)
    if end_magic != b"DRPEND\x00\x01":
        sys.exit("the end marker is missing: truncated")
    record = chunk_size + 16
    aead = AESGCM(data_key)
    out = bytearray()
    for i in range(chunks):
        last = i == chunks - 1
        piece = body[i * record:] if last else body[i * record:(i + 1) * record]
        nonce = prefix + struct.pack(">IB", i, 1 if last else 0)
        out += aead.decrypt(nonce, piece, fixed + footer if last else fixed)
    if len(out) != plaintext_size:
        sys.exit("size mismatch")
    with open(target, "wb") as f:
        f.write(out)
    print(f"artifact {artifact_id.hex()} key {key_id.decode()}: {plaintext_size} bytes, "
          f"sha256 {hashlib.sha256(out).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or "DRPANEL_KEY" not in os.environ:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], base64.b64decode(os.environ["DRPANEL_KEY"]))
