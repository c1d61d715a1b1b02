#!/usr/bin/env python3
"""Decrypt a DR Panel artifact without the panel: needs only Python 3 and ``cryptography``.

    DRPANEL_KEY=<base64 master key> python3 decrypt_artifact.py ARTIFACT OUTPUT

It follows the byte layout in docs/administrator.md ("Artifact format") independently of the panel's
code: it reads the header, unwraps the data key with the master key (wrap method 1, AES-256-GCM),
reads the end marker, then authenticates and decrypts one chunk at a time into a temporary file
beside OUTPUT, renamed to OUTPUT only when every chunk authenticated. Memory stays at about two
chunks whatever the artifact's size. KMS-wrapped keys (method 2) need the panel or boto3.
"""

import base64
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def read_exactly(f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        sys.exit("the artifact is shorter than its layout says: truncated")
    return data


def main(source: str, target: str, master_key: bytes) -> None:
    with open(source, "rb") as f:
        fixed = read_exactly(f, 37)
        magic, version, algorithm, chunk_size, artifact_id, prefix = struct.unpack(">8sBBI16s7s", fixed)
        if magic != b"DRPANEL\x1a" or version != 1 or algorithm != 1:
            sys.exit("not a version-1 DR Panel artifact")
        length_bytes = read_exactly(f, 2)
        (section_length,) = struct.unpack(">H", length_bytes)
        section = read_exactly(f, section_length)
        checksum = read_exactly(f, 8)
        if hashlib.sha256(fixed + length_bytes + section).digest()[:8] != checksum:
            sys.exit("header checksum mismatch")
        key_id_length = section[0]
        key_id = section[1:1 + key_id_length]
        wrap_method, wrapped_length = struct.unpack(">BH", section[1 + key_id_length:4 + key_id_length])
        wrapped = section[4 + key_id_length:4 + key_id_length + wrapped_length]
        if wrap_method != 1:
            sys.exit("this artifact's data key is wrapped by KMS; use the panel")
        aad = b"drpanel-wrap-v1\x00" + key_id + b"\x00" + fixed
        data_key = AESGCM(master_key).decrypt(wrapped[:12], wrapped[12:], aad)
        body_start = f.tell()
        f.seek(0, os.SEEK_END)
        body_end = f.tell() - 20
        if body_end < body_start:
            sys.exit("the end marker is missing: truncated")
        f.seek(body_end)
        footer = read_exactly(f, 20)
        end_magic, plaintext_size, chunks = struct.unpack(">8sQI", footer)
        if end_magic != b"DRPEND\x00\x01":
            sys.exit("the end marker is missing: truncated")
        f.seek(body_start)
        record = chunk_size + 16
        aead = AESGCM(data_key)
        digest = hashlib.sha256()
        written = 0
        partial = f"{target}.partial"
        try:
            with open(partial, "wb") as out:
                for i in range(chunks):
                    last = i == chunks - 1
                    piece = read_exactly(f, body_end - f.tell() if last else record)
                    nonce = prefix + struct.pack(">IB", i, 1 if last else 0)
                    plain = aead.decrypt(nonce, piece, fixed + footer if last else fixed)
                    digest.update(plain)
                    out.write(plain)
                    written += len(plain)
            if written != plaintext_size or f.tell() != body_end:
                sys.exit("size mismatch")
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    print(f"artifact {artifact_id.hex()} key {key_id.decode()}: {plaintext_size} bytes, "
          f"sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or "DRPANEL_KEY" not in os.environ:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], base64.b64decode(os.environ["DRPANEL_KEY"]))
